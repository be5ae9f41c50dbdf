"""Sessions: run commands and send files on one host, over SSH or locally.

Import from the module that owns a name: `base` (the Session and Stream protocols, the
result types and the shared runner), `targets`, `hostkeys`, `redact`, `sudo`, `upload`,
`transport`, `ssh` (SSHSession, connect_all) and `local` (LocalSession). Only the SSH
modules (`ssh`, `transport`, `hostkeys`) import paramiko.
"""
