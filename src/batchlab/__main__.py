from batchlab.cli.commands import main

main()
