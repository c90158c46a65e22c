from aitune_triton.cli import main

main()
