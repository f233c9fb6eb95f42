"""dropgate's common library: settings, storage, database, auth, scanning, logging.

Function folders import from here; nothing here imports a function folder.
"""
