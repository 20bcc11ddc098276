from classicnets.cli import main

raise SystemExit(main())
