from services.device_plugin.cli import main

raise SystemExit(main())
