from precip_cvae.cli import main

raise SystemExit(main())
