from services.core.runtime import main
from services.vector.step import VectorStep

main(VectorStep)
