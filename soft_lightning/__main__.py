from soft_lightning.utils.logs import quiet

quiet()  # before vLLM, transformers and bitsandbytes are imported

from soft_lightning.cli import main  # noqa: E402

# vLLM starts its workers with `spawn`, which re-imports this module: the guard keeps them
# from starting a second run.
if __name__ == "__main__":
    main()
