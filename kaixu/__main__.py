from kaixu.cli import main

raise SystemExit(main())
