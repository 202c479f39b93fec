"""Install, upgrade, inspect and remove agents on remote hosts over SSH (asyncssh).

The installer runs on the collector host: it creates one-time join tokens
directly in the collector's database and reads the CA from its TLS
directory, so a freshly installed agent enrols itself and appears in
``slaprobe agent list`` without manual steps.

Modules, in the order one host goes through them:

=================  ==================================================================================
``inventory``      which hosts: ``[user@]host[:port]`` arguments or a file
``hostkeys``       known_hosts policy: verify, refuse unknown, pin with --accept-new
``ssh``            connect (asyncssh errors mapped to ours), run, upload over SFTP
``wheelhouse``     the wheel of the running slaprobe + its dependencies, cached
``bundle``         the agent's runtime built once from them, one archive per host; which hosts it fits
``templates``      agent config, hardened systemd unit, fallback supervisor
``collector``      the collector side: token, join bundle, "has it been seen?"
``plan``           the remote steps, driven by the host's manifest (idempotency)
``runner``         bounded concurrency, per-host progress, the summary table
=================  ==================================================================================

Errors (``errors``)::

    InstallError            this host could not be handled; the message is the reason in the summary
     ├── HostKeyError       unknown host without --accept-new, or a changed key: nothing was sent
     ├── ConnectError       unreachable, refused, timed out, authentication failed
     ├── RemoteError        a remote step failed: the step, its exit status, the tail of its stderr
     └── EnrolError         the agent did not enrol or the collector never saw it

One host's error never stops the others: the runner catches ``InstallError``
per host and reports it in the summary.
"""
