"""``python -m birq_fs2.recipes.finetune OUTPUT_DIR --config-file FILE [--config k=v ...]``
(also ``birq-finetune``). Re-running the same command resumes from the last checkpoint."""

from fairseq2.recipe import main as recipe_main

from birq_fs2.recipes.finetune.recipe import BirqFinetuneRecipe


def main() -> None:
    recipe_main(BirqFinetuneRecipe())


if __name__ == "__main__":
    main()
