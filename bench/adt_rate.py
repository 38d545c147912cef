#!/usr/bin/env python3
"""HL7 v2 ADT applied per second over one MLLP connection, each answered with its ACK before the next is sent
(how an ADT feed talks to a receiver). Mosaic only: Debian's Orthanc has no HL7 listener to compare with.

    .venv/bin/python bench/adt_rate.py [--messages 2000]

Half the messages are A04 (each creates a patient), half A08 (each updates one of them); a fresh node on SQLite
in a temporary folder, python-hl7's MLLP client. Prints the rate and how many were acknowledged AA.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from hl7.client import MLLPClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, Hl7Sender, Hl7Settings, HttpSettings, Settings


def message(index: int, half: int) -> str:
    event = "A04" if index < half else "A08"
    return (f"MSH|^~\\&|EPIC|GENHOSP|MOSAIC|RAD|20261207||ADT^{event}^ADT_A01|C{index}|P|2.5.1\rEVN|{event}\r"
            f"PID|1||MRN{index % half}^^^GENHOSP||Name{index}^Given||19700101|F\r")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    half = max(args.messages // 2, 1)
    with tempfile.TemporaryDirectory(prefix="bench-hl7-") as folder:
        node = Mosaic(Settings(data_dir=Path(folder), http=HttpSettings(port=0), dicom=DicomSettings(port=0),
                               hl7=Hl7Settings(port=0, senders=[Hl7Sender(application="EPIC", may_send=["ADT"])])))
        node.start(http=False)
        try:
            messages = [message(index, half) for index in range(2 * half)]
            with MLLPClient("127.0.0.1", node.hl7_port) as client:
                started = time.perf_counter()
                answers = [client.send_message(message) for message in messages]
                elapsed = time.perf_counter() - started
        finally:
            node.stop()
    accepted = sum(b"MSA|AA" in answer for answer in answers)
    print(f"{len(messages)} ADT messages ({half} A04 creating, {half} A08 updating) over one MLLP connection in "
          f"{elapsed:.2f} s: {len(messages) / elapsed:.0f} messages/s; {accepted} answered AA")
    return 0 if accepted == len(messages) else 1


if __name__ == "__main__":
    sys.exit(main())
