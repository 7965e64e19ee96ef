from soft_lightning.cli import main

# vLLM starts its workers with `spawn`, which re-imports this module: the guard keeps them
# from starting a second run.
if __name__ == "__main__":
    main()
