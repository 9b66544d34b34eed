"""Rule check_pair: the checks that need both prepared models (tokenizers, width)."""

import json

from mneme.logs import setup_logging
from mneme.models import check_pair


def main(smk) -> None:
    log = setup_logging(smk.log[0])
    result = check_pair(smk.input.base, smk.input.finetuned, smk.wildcards.pair)
    log.info("pair %s ok: %s", smk.wildcards.pair, result)
    with open(smk.output[0], "w") as fh:
        json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
