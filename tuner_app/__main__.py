from tuner_app.cli import main

main()
