from services.core.runtime import main
from services.verifier.step import VerifierStep

main(VerifierStep)
