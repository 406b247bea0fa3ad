from kvinfer.cli import main

raise SystemExit(main())
