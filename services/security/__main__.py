from services.compose import main

main("security")
