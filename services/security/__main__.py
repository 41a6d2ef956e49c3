from services.core.runtime import main
from services.security.step import SecurityStep

main(SecurityStep)
