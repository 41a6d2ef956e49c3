from services.core.runtime import main
from services.uploader.step import UploaderStep

main(UploaderStep)
