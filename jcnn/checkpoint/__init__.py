"""Checkpoints: a pytree of arrays as ``.npz`` plus a JSON sidecar, written atomically and
checksummed.

``save_checkpoint('run/epoch_003.npz', {'params': p, 'state': s, 'opt_state': o}, meta)``
writes ``run/epoch_003.npz`` (one array per leaf, named by its '/'-joined key path, e.g.
``params/conv1_1/w`` or ``opt_state/0/mu/conv1_1/w``) and ``run/epoch_003.json`` (the
metadata, the list of keys, the SHA-256 of the ``.npz`` bytes and the SHA-256 of the sidecar's
own content). Each file goes to a temporary file in the same folder, is flushed and
fsync'ed, moved into place with :func:`os.replace`, and the folder is fsync'ed; the sidecar
is written last, so its presence marks a complete checkpoint. No pickle anywhere:
``np.load(..., allow_pickle=False)``, plain JSON.

``load_checkpoint(path, like_tree)`` verifies the checksums (a mismatch is a
:class:`CorruptCheckpointError`), rebuilds a pytree with the structure of ``like_tree`` (e.g.
a freshly initialised model and optimiser state), checking every leaf's shape and dtype, and
returns ``(tree, metadata)``.

Every sidecar is read within bounds, signed or not (:func:`read_sidecar`: its size, how deep
it nests, no infinite numbers), and a run's sidecar must also hold every value the run reads
back, each of its type and in its range (:func:`check_run_sidecar`). For runs that resume:
:func:`latest_checkpoint` finds the newest complete checkpoint of a folder whose checksums
(and, for a run, :func:`latest_run_checkpoint`, whose schema) hold, moving the others aside
(``*.corrupt``) with a warning, so the previous one is used;
:func:`remove_stale_temporaries` deletes the temporary files a killed writer left behind.

A training run's checkpoints (the :class:`~jcnn.solver.Solver`'s and the apps'), in one
place: their names (:func:`run_checkpoint_path`: ``epoch_{epoch:03d}.npz`` at an epoch's end,
``step_{iteration:08d}.npz`` between), which are kept (:func:`prune_run_checkpoints`), which
one a run starts from (:func:`resume_checkpoint`), and whether it may
(:func:`check_resumable`: the format version, then :func:`config_differences`, the one
comparison of a checkpoint's settings with the run's, which the apps use for their flags
too). The settings include ``data.fingerprint``, a SHA-256 of the training and validation
arrays (:attr:`jcnn.solver.Solver.data_fingerprint`): other data is a mismatch unless the
caller ignores that key (``Solver(check_data=False)``); a checkpoint made before the key
existed is not checked on it (:data:`IDENTITY_ACCEPT_ABSENT`). Pruning also deletes orphans,
``.npz`` files older than the newest complete checkpoint whose sidecar is gone (a kill while
pruning); corrupt checkpoints moved aside (``*.corrupt``) are never deleted here.
"""

from jcnn.checkpoint.folder import *  # noqa: F403
from jcnn.checkpoint.folder import __all__ as _folder_all
from jcnn.checkpoint.runs import *  # noqa: F403
from jcnn.checkpoint.runs import __all__ as _runs_all
from jcnn.checkpoint.store import *  # noqa: F403
from jcnn.checkpoint.store import __all__ as _store_all

__all__ = sorted([*_store_all, *_folder_all, *_runs_all])
