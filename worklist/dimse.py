"""The DIMSE services of the worklist package, plugged into the archive's acceptor
through the ``pacs.dimse`` entry point (:func:`pacs.dimse.server.plugin_services`).

* Modality Worklist Information Model - FIND (1.2.840.10008.5.1.4.31): C-FIND,
  :mod:`worklist.mwl` (AE policy permission "mwl");
* Modality Performed Procedure Step (1.2.840.10008.3.1.2.3.3): N-CREATE and N-SET,
  :mod:`worklist.mpps` (AE policy permission "mpps").

Both with Explicit and Implicit VR Little Endian.
"""

from __future__ import annotations

from pacs.dimse import command as cmd
from pacs.dimse.service import ServiceBinding

from . import mpps, mwl

MWL_FIND = "1.2.840.10008.5.1.4.31"


def services() -> list[ServiceBinding]:
    """The ``pacs.dimse`` entry point: the SOP classes this package serves."""
    return [
        ServiceBinding(MWL_FIND, {cmd.C_FIND_RQ: mwl.handle_mwl_find}),
        ServiceBinding(mpps.MPPS_SOP_CLASS, {cmd.N_CREATE_RQ: mpps.handle_n_create, cmd.N_SET_RQ: mpps.handle_n_set}),
    ]
