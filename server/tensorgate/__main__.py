from tensorgate.cli import main

raise SystemExit(main())
