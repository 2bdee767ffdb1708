"""``python -m birq_fs2.recipes.pretrain OUTPUT_DIR --config-file FILE [--config k=v ...]``
(also ``birq-pretrain``). Re-running the same command resumes from the last checkpoint."""

from fairseq2.recipe import main as recipe_main

from birq_fs2.recipes.pretrain.recipe import BirqPretrainRecipe


def main() -> None:
    recipe_main(BirqPretrainRecipe())


if __name__ == "__main__":
    main()
