from services.compose import main

main("relational")
