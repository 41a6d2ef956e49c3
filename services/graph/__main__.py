from services.compose import main

main("graph")
