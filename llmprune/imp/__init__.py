"""Lottery tickets by iterative magnitude pruning with rewinding: in pretrained BERT, and from scratch.

One runner for every domain: ``runner`` (rounds, controls, trials, resume, rewinding),
``pruning`` (global and layer-wise rules), ``masks`` (mask bookkeeping, storage),
``schedule`` (BERT's sparsity per round), ``report`` (statistics, matching rule, CSV, plots),
``options`` (the one options dataclass per job; YAML recipes). A domain is one file that says
what a job is: ``bert`` (a pretrained encoder fine-tuned on a text task; with ``tasks``,
``metrics``, ``features``, ``encoder``, ``train``, ``ticket``) and ``lth`` (LeNet, Conv-2/4/6 and
MLPs trained from scratch, Frankle & Carbin; with ``vision_models``, ``vision_data``,
``lth_report``).
"""
