r"""Time one training step (forward + backward + optimiser update) of jcnn models against
PyTorch eager.

    python -m experiments.benchmark                                  # three_layer, vgg; batch 50
    python -m experiments.benchmark --models=vgg --rounds=7 --repeats=30 --json_out=vgg.json
    python -m experiments.benchmark --models=airbench --batch_sizes=256 --rounds=1 --repeats=3
    python -m experiments.benchmark --tiny --repeats=2 --rounds=1    # smoke run, seconds

Models (``--models``; their sizes come from :mod:`experiments.recipes`, overridable by the
``--three_layer_*``, ``--vgg_*`` and ``--airbench_*`` flags):

* ``three_layer``: the assignment's :class:`~jcnn.models.ThreeLayerConvNet` (hidden 500);
* ``vgg``: the seed configuration's :class:`~jcnn.models.VGGNet`;
* ``airbench`` (not in the default list): airbench94's :class:`~jcnn.models.AirbenchNet`
  (widths 64, 256, 256; label smoothing 0.2), with random whitening filters (the values do
  not change the cost). Its batch is airbench's 1,024 unless ``--batch_sizes`` says
  otherwise; a 1,024-image step takes seconds on a 2-core CPU, so a short run takes
  ``--batch_sizes=256 --repeats=3`` (and few rounds).

The cs231n models update with Adam (optax's defaults, ``--learning_rate``). airbench updates
with plain SGD with Nesterov momentum 0.85 (airbench's momentum) at ``--learning_rate``, in
both frameworks, on every trainable parameter (all but the frozen whitening filters; torch's
batchnorm weights are fixed at 1, jcnn's batchnorm has none): airbench's parameter groups,
weight decay, schedule and lookahead are left out, since what a step costs is its forward
and backward pass. The ``solver`` impl does not run airbench.

Implementations (``--impls``):

* ``jcnn``: the model on jcnn's hand-written layers (``layers='jcnn'``);
* ``reference``: the same model on the autodiff twins of :mod:`jcnn.reference`
  (``layers='reference'``), i.e. plain JAX + ``jax.grad``;
* ``torch``: the same network in PyTorch eager (:mod:`experiments.torch_models`), when torch is
  importable (``pip install torch``; it is not a jcnn dependency);
* ``torch_compile`` (not in the default list): the torch step with ``torch.compile`` on the loss;
* ``jcnn_no_native`` (not in the default list): ``jcnn`` with its compiled CPU kernels turned off
  (``JCNN_NATIVE=0`` in that worker; see :mod:`jcnn.native`), so ``jcnn/jcnn_no_native`` is what
  the kernels bring, measured side by side;
* ``jcnn_no_onednn`` (not in the default list): ``jcnn`` with only its oneDNN convolutions
  turned off (``JCNN_ONEDNN=0``; :mod:`jcnn.native.onednn`): XLA's convolutions, jcnn's
  other kernels;
* ``jcnn_bf16`` and ``torch_bf16`` (not in the default list): the network computed in bfloat16
  with float32 parameters, optimiser and loss: jcnn through
  :func:`jcnn.precision.mixed_precision_loss` (``compute_dtype='bfloat16'``), PyTorch eager
  under ``torch.autocast('cpu', torch.bfloat16)``, its fastest CPU mode;
* ``solver`` (not in the default list): the jcnn model trained by :class:`jcnn.solver.Solver`
  for two epochs on ``--solver_num_train`` random CIFAR-sized images (minibatch sampling on
  the host, the jitted update, accuracy checks on 1,000 train and 1,000 val images at each
  epoch end; ``--solver_augment`` adds random crops and flips inside the step). Its "step" is
  the second epoch's training time (up to the accuracy check) over its iterations, so the
  ``solver/jcnn`` ratio says how close a real training loop comes to the bare step; the
  worker's JSON also has the whole epoch's time, accuracy check included (``epoch_s``).

The JAX step is written the way a user writes it in a notebook, with only the public model API:
one ``jax.jit`` function over ``jax.value_and_grad(model.loss, has_aux=True)`` and
``optax.adam`` (airbench: ``optax.sgd`` with ``nesterov=True``), with params / state /
optimiser state / key donated. The torch step is
``zero_grad`` / forward / ``backward`` / ``step``.

How it is measured:

* Every (model, batch size, impl) runs in its own fresh process (this module with ``--worker``),
  one after another, never concurrently. ``--rounds`` repeats the whole set; the impls are
  interleaved within each round (``--order=rotate``, the default, also rotates which impl goes
  first, so no impl is always first or last).
* A worker builds the model (fixed ``--seed``), draws float32 data once and keeps it on the
  device, times the first call (trace + compile + one step, reported as "compile"), runs
  ``--warmup`` untimed steps, then times ``--repeats`` steps one by one (``block_until_ready``
  on every output for JAX, ``cuda.synchronize`` for torch on a GPU), and prints one JSON line.
* Before the first round the parent waits until the 1-minute load average is below
  ``--quiet_load`` (or ``--quiet_max_wait`` seconds have passed), and reports the load seen. Each
  worker also reports the CPU time other processes used while it was timing
  (``others_cpu_frac``: 0 = the machine was ours alone, 1 = another process kept every core busy;
  null when the timed window was too short to say, under about half a CPU-second).
* Per (model, batch, impl): min and median seconds per step over all timed steps of all rounds,
  img/s at the median, median compile time. Ratios are throughput ratios (``a/b`` > 1: ``a``
  faster), computed per round from the two workers' median step times, then the median (and
  range) over rounds.

Output: a markdown table on stdout (progress on stderr) and, with ``--json_out``, a JSON file
with the machine description (CPU, cores, affinity, jax/jaxlib/torch versions, XLA_FLAGS in
effect, jax devices, torch threads), the summaries, the ratios and every worker's raw step
times. The exit status is 1 if any worker failed (the table still shows the others).

The package, one job per module: :mod:`~experiments.benchmark.options` (the flags and the
models they describe), :mod:`~experiments.benchmark.machine` (the /proc and CPU probing,
platform records), :mod:`~experiments.benchmark.workers` (one timed (model, batch, impl) in
this process), :mod:`~experiments.benchmark.spawn` (a worker in a fresh process, the impl
order), :mod:`~experiments.benchmark.report` (summaries, ratios, the tables) and
:mod:`~experiments.benchmark.cli` (``main``, run by ``python -m experiments.benchmark``).
"""
