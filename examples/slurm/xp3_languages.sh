# The xP3 languages (folders of the xP3 download, `code` included), one preprocessing array task
# each, in this order. Sourced by preprocess_xp3.slurm and submit_preprocess_xp3.sh; set
# LANGUAGES="fr en ..." to process a subset.
# shellcheck shell=bash
read -r -a XP3_LANGUAGES <<< "${LANGUAGES:-ak ar as bm bn ca code en es eu fon fr gu hi id ig ki kn lg ln ml mr ne nso ny or pa pt rn rw sn st sw ta te tn ts tum tw ur vi wo xh yo zh zu}"
export XP3_LANGUAGES
