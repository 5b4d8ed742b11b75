from gpuhub.cli import main

main(prog_name="gpuhub")
