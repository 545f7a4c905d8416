"""The Dakar server: the api/ handlers as one long-lived service (host/server), never deployed to Vercel.

    python -m host --bind 127.0.0.1:3100 --workers 2

vercel.json's `excludeFiles` keeps everything outside api/ and lib/ out of the functions' bundle.
"""
