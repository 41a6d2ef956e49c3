from services.compose import main

main("vector")
