from services.scheduler.cli import main

raise SystemExit(main())
