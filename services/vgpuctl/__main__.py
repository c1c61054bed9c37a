from services.vgpuctl.cli import main

raise SystemExit(main())
