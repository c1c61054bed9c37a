from services.monitor.cli import main

raise SystemExit(main())
