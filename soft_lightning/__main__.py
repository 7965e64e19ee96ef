from soft_lightning.utils.logs import quiet

quiet()  # before vLLM, transformers and bitsandbytes are imported

# A `spawn`-ed child (vLLM's workers, a spawned sampler) re-imports this module as `__mp_main__`:
# inside the guard, the CLI's imports (Lightning, torchmetrics, jsonargparse) and a second run
# stay out of it.
if __name__ == "__main__":
    from soft_lightning.cli import main

    main()
