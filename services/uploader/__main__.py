from services.compose import main

main("uploader")
