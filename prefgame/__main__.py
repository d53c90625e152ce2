import sys

try:
    from prefgame.cli import main

    code = main()
except KeyboardInterrupt:  # Ctrl-C while Python loads the command line (main handles the rest)
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stderr.write("prefgame: interrupted\n")
    code = 130
sys.exit(code)
