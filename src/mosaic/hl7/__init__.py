"""HL7 v2 over MLLP: the door the EHR, RIS and ADT feeds use (`mllp` framing, `charsets` per MSH-18, `message`
reading, `ack` original-mode acknowledgements, `listener` the socket server, `door` who may send what and how each
message is applied and audited; `adt` maps patient segments to the archive's patient identity and demographics)."""
