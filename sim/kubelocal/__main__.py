from sim.kubelocal.cli import main

raise SystemExit(main())
