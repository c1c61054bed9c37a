from services.local.cli import main

raise SystemExit(main())
