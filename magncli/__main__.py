from magncli.cli.app import main

main()
