from omniforcing.cli import main

main()
