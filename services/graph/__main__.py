from services.core.runtime import main
from services.graph.step import GraphStep

main(GraphStep)
