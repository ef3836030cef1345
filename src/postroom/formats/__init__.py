"""Files MAPI messages travel in outside a store: RFC 5322 files, mbox, Maildir (`mailboxes`),
Outlook's `.msg` (`msg`, over the compound-file writer `cfb` and the RTF codec `rtf`).

This package sits beside `mime.py` in the vocabulary layer: it turns bytes into `MessageData`
and back, and never sees the store; the face (`Session.import_files`, `Session.export_*`) saves
and loads what it makes.
"""
