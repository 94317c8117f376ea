from splitnet.cli import main

raise SystemExit(main())
