from services.compose import main

main("verifier")
