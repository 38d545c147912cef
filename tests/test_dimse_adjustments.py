"""pynetdicom is changed in one place, when a listener starts (or an SCU first calls): importing Mosaic's modules
changes nothing in it (:mod:`mosaic.dimse.adjustments`)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CHECK = textwrap.dedent("""
    import pkgutil, importlib
    from pynetdicom import _config, acse, dimse_messages
    from pynetdicom.association import Association
    from pynetdicom.dimse import DIMSEServiceProvider
    from pynetdicom.dul import DULServiceProvider
    from pynetdicom.transport import AssociationSocket

    def state():
        return (_config.STORE_RECV_CHUNKED_DATASET, _config.STORE_SEND_CHUNKED_DATASET, _config.LOG_HANDLER_LEVEL,
                DULServiceProvider._read_pdu_data, DIMSEServiceProvider.receive_primitive, AssociationSocket.ready,
                dimse_messages.NamedTemporaryFile, acse.negotiate_as_acceptor, Association.send_c_store)

    before = state()
    import mosaic, mosaic.app
    for module in pkgutil.walk_packages(mosaic.__path__, "mosaic."):
        if not module.name.endswith(".__main__"):  # `python -m mosaic.cli` runs the command line
            importlib.import_module(module.name)
    assert state() == before, "importing a Mosaic module changed pynetdicom"
    from mosaic.dimse import adjustments
    adjustments.apply()
    after = state()
    assert all(changed != unchanged for changed, unchanged in zip(after, before)), (before, after)
    adjustments.apply()
    assert state() == after, "apply() twice changes nothing more"
    print("ok")
""")


def test_importing_mosaic_changes_nothing_in_pynetdicom_and_apply_changes_it_once() -> None:
    source = Path(__file__).resolve().parent.parent / "src"
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=False, timeout=120,
                            env={"PYTHONPATH": str(source), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
