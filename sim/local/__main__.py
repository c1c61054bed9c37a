from sim.local.cli import main

raise SystemExit(main())
