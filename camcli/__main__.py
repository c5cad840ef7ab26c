from camcli.cli import main

main()
