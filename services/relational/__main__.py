from services.core.runtime import main
from services.relational.step import RelationalStep

main(RelationalStep)
