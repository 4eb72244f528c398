from .registrar import main

main()
