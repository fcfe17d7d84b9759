from udpxfer.cli import main

main()
