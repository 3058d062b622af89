from ratatoskr_server.cli import main

raise SystemExit(main())
